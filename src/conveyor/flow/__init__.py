"""Flow control: unique tasks, rate and concurrency limits, workflows and routing strategies.

See docs/flow-control.md. ``options`` holds what a task type declares, ``limits`` the claim-time
admission and the slot releases, ``workflows`` the step graph, ``routing`` the node choice,
``hooks`` what a worker calls, ``service`` what the API and the CLI call, ``canvas`` the Python
builders (``chain``, ``group``, ``chord``, ``Workflow``). Nothing here runs for an ordinary task.
"""
