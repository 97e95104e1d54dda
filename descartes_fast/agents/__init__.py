"""Agents: the processes this server runs and everything known about them (no ZeroMQ here).

* :mod:`~descartes_fast.agents.backends`: how a spawn request's ``model_backend`` becomes a command line;
  :mod:`~descartes_fast.agents.policy`: what a request may ask for, and the limits agents run under.
* :mod:`~descartes_fast.agents.process`: one agent's OS process (pipes, stdin queue, exit, group signals);
  :mod:`~descartes_fast.agents.limits`: rlimits, the memory watchdog, the wall clock;
  :mod:`~descartes_fast.agents.store` and :mod:`~descartes_fast.agents.lineindex`: output on disk, its index;
  :mod:`~descartes_fast.agents.records` and :mod:`~descartes_fast.agents.state`: what the state directory keeps.
* :mod:`~descartes_fast.agents.supervisor`: the registry of agents and their state machine.
"""
