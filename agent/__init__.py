"""agent package."""

import sys

# httpx imports its optional command line (click, rich, pygments: ~90 modules,
# ~5.5 MB RSS and ~0.1 s of start-up) whenever click is installed, which it
# is on a terminal (uvicorn needs it); the agent never runs that CLI. A None
# entry makes httpx fall back to its stub (encode/httpx#3547 moves it out).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
