"""Conveyor's side of the benchmark: the task module its workers load and its client."""
