"""NCRONTAB schedules as Azure Functions timers use them: six fields, seconds first, in UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {name: index for index, name in enumerate(_MONTH_NAMES, 1)}
_DAYS = {name: index for index, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_NO_NAMES: dict[str, int] = {}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, _NO_NAMES),
    ("minute", 0, 59, _NO_NAMES),
    ("hour", 0, 23, _NO_NAMES),
    ("day", 1, 31, _NO_NAMES),
    ("month", 1, 12, _MONTHS),
    ("weekday", 0, 6, _DAYS),
)
_HORIZON = timedelta(days=366 * 5)


class ScheduleError(ValueError):
    """The expression is not a six-field NCRONTAB schedule."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule: the allowed values of each field."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        """Parse `{second} {minute} {hour} {day} {month} {day-of-week}`."""
        fields = expression.split()
        if len(fields) != 6:
            raise ScheduleError(
                f"{expression!r}: an NCRONTAB schedule has six fields (seconds first), not {len(fields)}"
            )
        sets = [
            _field(text, name, low, high, names) for text, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
        ]
        return cls(expression, *sets)

    def next_after(self, moment: datetime) -> datetime:
        """Return the first matching whole second strictly after `moment` (UTC)."""
        current = moment.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        limit = current + _HORIZON
        while current < limit:
            if current.month not in self.months:
                current = _next_month(current)
            elif current.day not in self.days or (current.isoweekday() % 7) not in self.weekdays:
                current = current.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif current.hour not in self.hours:
                current = current.replace(minute=0, second=0) + timedelta(hours=1)
            elif current.minute not in self.minutes:
                current = current.replace(second=0) + timedelta(minutes=1)
            elif current.second not in self.seconds:
                current += timedelta(seconds=1)
            else:
                return current
        raise ScheduleError(f"{self.expression!r} never matches")


def _next_month(moment: datetime) -> datetime:
    first = moment.replace(day=1, hour=0, minute=0, second=0)
    return first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_item(item, name, low, high, names))
    if name == "weekday" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


def _item(item: str, name: str, low: int, high: int, names: dict[str, int]) -> range:
    top = 7 if name == "weekday" else high
    span, _, step_text = item.partition("/")
    try:
        step = int(step_text) if step_text else 1
    except ValueError:
        raise ScheduleError(f"bad step {step_text!r} in the {name} field") from None
    if step < 1:
        raise ScheduleError(f"the step in the {name} field must be positive")
    if span == "*":
        start, end = low, high
    else:
        first, dash, last = span.partition("-")
        start = _value(first, name, low, top, names)
        end = _value(last, name, low, top, names) if dash else (high if step_text else start)
        if end < start:
            raise ScheduleError(f"range {span!r} in the {name} field runs backwards")
    return range(start, end + 1, step)


def _value(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    upper = text.strip().upper()
    if upper in names:
        return names[upper]
    try:
        value = int(upper)
    except ValueError:
        raise ScheduleError(f"{text!r} is not a valid {name}") from None
    if not low <= value <= high:
        raise ScheduleError(f"{value} is out of range for the {name} field ({low}-{high})")
    return value
