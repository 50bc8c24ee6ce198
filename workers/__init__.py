"""The worker runtime: runs the capability handlers of a user's :class:`fleet.App`
(``fleet worker --app module:app``). Users write handlers against the kernel's contract
(``from fleet import App, TaskContext``), never against this package."""
