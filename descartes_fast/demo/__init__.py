"""Demos: the swarm behind ``descartes-fast demo`` (:mod:`.swarm`), the demo agent it runs
(:mod:`.agent`, the ``demo`` backend), and ``descartes-fast codec-demo`` (:mod:`.codec`)."""
