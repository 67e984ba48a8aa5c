"""Alert routes (list, acknowledge, resolve, silences), over the store methods of the alerts contract
(/work/notes/alerts-contract.md → occ/store/alerts.py). Filled in once that schema is on main."""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
