from django.db import migrations

# One NOTIFY per INSERT statement, sent by PostgreSQL itself in the inserting transaction (and so
# delivered only at its commit): no extra round trip per outbox row in the caller's transaction,
# and a row inserted by any path (a service, the shell, plain SQL) wakes the relays.
CREATE = """
CREATE FUNCTION tasks_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tasks_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_outbox_notify AFTER INSERT ON tasks_outboxmessage
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_outbox_notify();
"""
DROP = """
DROP TRIGGER IF EXISTS tasks_outbox_notify ON tasks_outboxmessage;
DROP FUNCTION IF EXISTS tasks_outbox_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("tasks", "0002_outbox")]

    operations = [migrations.RunSQL(CREATE, DROP)]
