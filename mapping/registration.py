"""The public import path of `register` (`from mapping.registration import register`), kept; it lives in
`mapping.functions`."""

from mapping.functions.registration import RegistrationError, register

__all__ = ["RegistrationError", "register"]
