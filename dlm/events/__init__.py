"""Notifications: what changed, told to RabbitMQ and webhooks (see docs/events.md).

Events are written by database triggers (revision 0006) into the ``outbox_event`` table in the very
transaction that makes the change, for the sinks that transaction names; ``dlm.events.relay`` delivers
them. The kinds of event:

- ``dlm.migration.update``: a copy was queued or changed status (payload: the migration row, as
  SKA-DLM publishes it; ``complete`` and ``job_status.success`` tell the outcome);
- ``dlm.item.state``: replicas changed state (payload: ``item_state``, ``actor``, ``items``: uid, oid,
  item_name, storage_id, uri, previous_state; at most 1000 items an event);
- ``dlm.item.expired``: the same, for replicas the expiry engine deleted;
- ``dlm.storage.event``: a storage's event (created, config changed, capacity exceeded or relieved,
  retired...), with the storage's name.
"""
