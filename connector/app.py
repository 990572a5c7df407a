"""Wiring: builds the source, sink, state store and field map from Settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from connector.charles import CharlesSink
from connector.errors import ConfigurationError
from connector.field_map import FieldMap, load_field_map
from connector.logs import get_logger, register_secrets
from connector.salesforce import SalesforceSource
from connector.settings import Settings
from connector.state import StateStore, state_url_password
from connector.sync import Syncer

log = get_logger("connector.app")


@dataclass
class App:
    settings: Settings
    field_map: FieldMap
    store: StateStore
    source: SalesforceSource
    sink: CharlesSink
    stop_event: threading.Event = field(default_factory=threading.Event)
    _checked: bool = False
    _syncer: Syncer | None = None

    owns_store: bool = True

    @classmethod
    def build(cls, settings: Settings, *, store: StateStore | None = None) -> App:
        """Build the pipeline's parts; with ``store``, share that state store instead of opening one."""
        register_settings_secrets(settings)
        field_map = load_field_map(settings.field_map, default_region=settings.default_region, tags_field=settings.tags_field)
        own = store is None
        app = cls(settings, field_map, store or StateStore(settings.state_url), SalesforceSource(settings), CharlesSink(settings))
        app.owns_store = own
        return app

    def renew_sink(self) -> None:
        """Replace a sink that was aborted with a new one."""
        self.sink.close(wait=False)
        self.sink = CharlesSink(self.settings)

    def check_field_map(self) -> list[str]:
        """Validate the field map against the org's describe; return the problems found."""
        fields = self.source.describe_fields(self.field_map.object_name)
        problems = self.field_map.check_against(fields)
        self._checked = not problems
        return problems

    def syncer(self) -> Syncer:
        """The app's Syncer, built after the field map passed the describe check."""
        if not self._checked:
            problems = self.check_field_map()
            if problems:
                raise ConfigurationError("field map does not match Salesforce:\n" + "\n".join(f"  - {p}" for p in problems))
        if self._syncer is None or self._syncer.sink is not self.sink:
            self._syncer = Syncer(self.settings, self.source, self.sink, self.store, self.field_map, stop_event=self.stop_event)
        self._syncer.stop_event = self.stop_event
        return self._syncer

    def close(self) -> None:
        self.sink.close()
        self.source.close()
        if self.owns_store:
            self.store.close()


def register_settings_secrets(settings: Settings) -> None:
    """Tell the log redaction about every secret in ``settings``, the state store's password included."""
    secrets = [
        secret.get_secret_value()
        for secret in (settings.charles_api_key, settings.salesforce_client_secret, settings.salesforce_private_key)
        if secret is not None
    ]
    password = state_url_password(settings.state_url)
    if password:
        secrets.append(password)
    register_secrets(secrets)
