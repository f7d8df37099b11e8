"""What the platform says about extension handlers, as records: the handlers a goal
state asks for (from ExtensionsConfig or FastTrack vmSettings) and their version manifests.

The parsers live elsewhere (wire/extensions_config.py for the XML documents,
wire/extensions_goal_state.py for vmSettings): a boot that only reads what it stored
needs these records, not an XML parser.
"""

from typing import Any, Literal, NamedTuple

PluginState = Literal["enabled", "disabled", "uninstall"]


class DependsOnExtension(NamedTuple):
    """One entry of a DependsOn block: a handler, and in multi-config an extension name."""

    handler: str
    extension: str | None = None


class ExtensionSettings(NamedTuple):
    """The settings of one extension: the handler's own (single-config, `name` None)
    or one named extension of a multi-config handler."""

    name: str | None
    seq_no: int
    state: PluginState
    settings_json: str | None
    public_settings: Any
    protected_settings: str | None
    protected_settings_cert_thumbprint: str | None
    dependency_level: int = 0
    depends_on: tuple[DependsOnExtension, ...] = ()


class Plugin(NamedTuple):
    """An extension handler to have in `state`, with where to get it and its settings."""

    name: str
    version: str
    state: PluginState
    location: str | None
    failover_location: str | None
    additional_locations: tuple[str, ...]
    auto_upgrade: bool
    is_json: bool
    encoded_signature: str | None
    is_multi_config: bool
    settings: tuple[ExtensionSettings, ...]
    dependency_level: int
    invalid_reason: str | None = None

    @property
    def manifest_uris(self) -> tuple[str, ...]:
        """Where the handler's manifest may be fetched, in the order to try them."""
        found = (self.location, self.failover_location, *self.additional_locations)
        return tuple(u for u in found if u)


class ManifestVersion(NamedTuple):
    """One version a manifest offers, with the URIs of its package."""

    version: str
    uris: tuple[str, ...]
    internal: bool = False
    disallow_major_version_upgrade: bool = False


class PluginVersionManifest(NamedTuple):
    """An extension (or agent) manifest: the versions available and where."""

    versions: tuple[ManifestVersion, ...]

    def find(self, version: str) -> ManifestVersion | None:
        """The entry for exactly this version, if offered."""
        return next((v for v in self.versions if v.version == version), None)
