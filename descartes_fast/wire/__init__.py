"""The wire: what goes over ZeroMQ, and nothing else (docs/protocol.md).

* :mod:`~descartes_fast.wire.schema`: every message and nested type, once (the single source of truth);
  :mod:`~descartes_fast.wire.layout`: the tables both codec twins derive from it;
  :mod:`~descartes_fast.wire.constants`: the numbers both twins use.
* :mod:`~descartes_fast.wire.codec`: ``encode`` / ``decode`` (rmp-serde compatible MessagePack), on the
  compiled twin ``_codec_c`` or the pure twin ``_codec_py``; :mod:`~descartes_fast.wire.errors` and
  :mod:`~descartes_fast.wire.texts`: what they raise, and the words they say it with.
* :mod:`~descartes_fast.wire.frames`: ROUTER envelopes and one-frame PUB messages (twins ``_frames_*``).
* ``_dispatch_*``: the socket hot path of both ends, draining a socket on readiness (server: ``Dispatcher``,
  client: ``Requester``), optionally calling libzmq directly.
* :mod:`~descartes_fast.wire.curve`: CurveZMQ key files and socket setup.
"""
