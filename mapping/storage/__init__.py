"""Storage: the table and the queue behind one client lifecycle, and Azure errors in the project's tree; the only code
that imports the storage SDKs. May import: errors, settings."""
