"""The public surface is explicit: what `conveyor` exports is exactly its __all__."""

import conveyor


def test_every_name_in_all_is_exported_and_nothing_public_is_missing() -> None:
    public = {name for name in vars(conveyor) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(conveyor, name)).__name__ == "module"}
    assert set(conveyor.__all__) - {"__version__"} == public - modules


def test_the_documented_quick_start_names_exist() -> None:
    for name in ("Conveyor", "TaskHandle", "Retry", "Abort", "TaskFailed", "current_task", "TaskStatus"):
        assert name in conveyor.__all__
