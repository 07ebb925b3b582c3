"""The event stream's log: what was committed, kept in Redis for a while (docs/events.md).

* :mod:`log` - the Redis stream (:class:`~log.EventLog`): the publish
  script that appends events in commit order per node, trims to the
  retention and knows which ``Last-Event-ID`` is too old; reads;
* :mod:`publisher` - the session hooks: a transaction's events are numbered
  per node before it commits and published after (never before) it did;
* :mod:`hub` - one reader per API process, handing each event to the open
  streams and long polls that want it, with a bounded buffer per stream;
* :mod:`sse` - the wire format (Server-Sent Events frames).

The events themselves (types, bodies) are :mod:`conductor.callbacks.events`:
one vocabulary for webhooks and the stream.
"""
