"""HTTP trigger route templates (`users/{user}`, `{id:int}`, `{name?}`, `{*rest}`) matched against request paths."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_PARAMETER = re.compile(r"\{(\*{0,2})([A-Za-z_][A-Za-z0-9_]*)(?::([^}?=]+))?(\?)?(?:=[^}]*)?\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?i:true|false)",
    "guid": r"[0-9A-Fa-f-]{32,36}",
}


@dataclass(frozen=True)
class RouteTemplate:
    """A compiled route template under the host's route prefix."""

    template: str
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    literal_segments: int

    @classmethod
    def compile(cls, template: str, *, prefix: str = "api") -> RouteTemplate:
        """Compile a template; literals match case-insensitively, as in the Functions host."""
        names: list[str] = []
        parts: list[str] = [f"/{re.escape(prefix.strip('/'))}"] if prefix.strip("/") else []
        literal_segments = 0
        for segment in [s for s in template.strip("/").split("/") if s]:
            whole = _PARAMETER.fullmatch(segment)
            if whole and (whole.group(1) or whole.group(4)):
                names.append(whole.group(2))
                inner = ".*" if whole.group(1) else _CONSTRAINTS.get((whole.group(3) or "").lower(), "[^/]+")
                parts.append(f"(?:/({inner}))?")
                continue
            literal_segments += 0 if whole else 1
            pieces, position = [], 0
            for match in _PARAMETER.finditer(segment):
                pieces.append(re.escape(segment[position : match.start()]))
                names.append(match.group(2))
                pieces.append(f"({_CONSTRAINTS.get((match.group(3) or '').lower(), '[^/]+')})")
                position = match.end()
            pieces.append(re.escape(segment[position:]))
            parts.append("/" + "".join(pieces))
        pattern = re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE)
        return cls(template, pattern, tuple(names), literal_segments)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Return the route parameters (percent-decoded) if the raw request path matches, else None."""
        found = self.pattern.match(raw_path)
        if found is None:
            return None
        return {
            name: unquote(value) for name, value in zip(self.names, found.groups(), strict=True) if value is not None
        }
