"""Indexes the inventory list needs at 100,000 mailboxes.

* ``(email_address, id)`` serves the "sort by address" keyset pages, as the
  model's ``(name, id)``-style indexes serve the other sorts.
* ``(classification, readiness, team_name)`` over mailboxes not removed lets the
  summary's GROUP BY queries read the index alone instead of every wide row.
* On PostgreSQL, trigram GIN indexes on ``UPPER(name)`` and
  ``UPPER(email_address)`` answer the list's search (``icontains`` compiles to
  ``UPPER(col::text) LIKE UPPER('%term%')``, which these indexes match). The
  embedded SQLite database searches without them.

The model does not declare these indexes, so they change the database only and
leave Django's model state alone.
"""

from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations, models


class AddIndexInDatabaseOnly(migrations.AddIndex):
    """Create an index the model does not declare."""

    def state_forwards(self, app_label, state):
        pass

    def describe(self):
        return f"Create index {self.index.name} on {self.model_name}, outside the model state"


class AddUpperTrigramIndex(migrations.operations.base.Operation):
    """On PostgreSQL, a GIN index on ``UPPER(column) gin_trgm_ops``; nothing elsewhere.

    Written as SQL because Django builds operator-class index expressions
    correctly only when ``django.contrib.postgres`` is an installed app.
    """

    reduces_to_sql = True
    reversible = True

    def __init__(self, model_name, column, name):
        self.model_name = model_name
        self.column = column
        self.name = name

    def deconstruct(self):
        return self.__class__.__name__, [self.model_name, self.column, self.name], {}

    def state_forwards(self, app_label, state):
        pass

    def _applies(self, schema_editor, model):
        return schema_editor.connection.vendor == "postgresql" and self.allow_migrate_model(
            schema_editor.connection.alias, model
        )

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self._applies(schema_editor, model):
            quote = schema_editor.quote_name
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(self.name)} ON {quote(model._meta.db_table)} "
                f"USING gin ((UPPER({quote(self.column)})) gin_trgm_ops)"
            )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if self._applies(schema_editor, model):
            schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(self.name)}")

    def describe(self):
        return f"Create trigram index {self.name} on UPPER({self.column}) (PostgreSQL only)"


class KeepTrigramExtension(TrigramExtension):
    """``CREATE EXTENSION IF NOT EXISTS pg_trgm`` on PostgreSQL; left in place when unapplied, as others may use it."""

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        pass


class Migration(migrations.Migration):
    dependencies = [
        ("migration", "0001_initial"),
    ]

    operations = [
        AddIndexInDatabaseOnly(
            "inventorymailbox",
            models.Index(fields=["email_address", "id"], name="inventory_address_idx"),
        ),
        AddIndexInDatabaseOnly(
            "inventorymailbox",
            models.Index(
                fields=["classification", "readiness", "team_name"],
                condition=models.Q(removed_at__isnull=True),
                name="inventory_summary_idx",
            ),
        ),
        KeepTrigramExtension(),
        AddUpperTrigramIndex("inventorymailbox", "name", "inventory_name_trgm_idx"),
        AddUpperTrigramIndex("inventorymailbox", "email_address", "inventory_address_trgm_idx"),
    ]
