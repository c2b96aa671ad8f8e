"""The agent runner: a ReAct loop over registered tools, with guardrails and recorded trajectories.

The core (``tools``, ``policy``, ``runner``, ``profiles``, ``pricing``, ``tracing``) is plain
Python with no Ray import, so unit tests drive it with a scripted policy. ``service`` owns
background runs, ``routes`` is the ``/v1/agent`` router and ``deployment`` the Serve wrapper.
"""
