"""Approval and model-change notifications: a signed webhook and e-mail, sent from the audit trail.

The audit store is the outbox, as for syslog (`zguard.audit.forwarder`): each channel is a
background thread that reads the events after its own durable cursor (`notify-webhook`,
`notify-email`), sends the ones `notifications.events` selects, and moves the cursor once they
are sent. Decisions:

- Only committed events are sent (they are read from the store), and nothing a request does
  waits on a webhook or a mail relay: the request path only appends events, as it always did.
- At least once: an event sent but not yet passed by the cursor when zguard stops is sent again
  after the restart. Receivers drop repeats by `X-Zguard-Event-Id` (the body's `event_id`).
- A first start begins at the trail's head: enabling notifications does not mail the history.
- One event in flight per channel, its body bounded (`MAX_BODY_BYTES`), nothing of prompts,
  images or the client's request in it (`zguard.audit.notifications.message`).
- Retries with `backoff_delay` on connection errors, 5xx and 429 (temporary 4xx answers for
  SMTP), up to `max_attempts`; then the event is recorded as `notification.failed` (an audit
  event, so it reaches syslog) and a log line, and the next event is sent. Any other 4xx is not
  retried: the receiver refused that body and would refuse it again.
- Recording a failure fails closed: when `notification.failed` cannot be written the event is
  kept and tried again later, so no event is passed over silently.
- With several replicas on one database each runs the channels; a `lease` (one sender at a
  time) plugs in where the replicas' leases live (`Notifier(lease=...)`).
"""
