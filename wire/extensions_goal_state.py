"""The extensions goal state: ExtensionsConfig or FastTrack vmSettings, whichever is newer.

Both documents describe the same thing (handlers, their versions, states and settings);
`from_extensions_config` and `parse_vm_settings` turn each into an `ExtensionsGoalState`
and `choose` picks the one the agent must act on (PLATFORM.md section 8): the newer by
creation time, never one older than the goal state already handled. A vmSettings answer
whose source is "Fabric" only mirrors ExtensionsConfig and is ignored, as waagent does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from wire.errors import DocumentError
from wire.handlers import DependsOnExtension, ExtensionSettings, Plugin, PluginState

if TYPE_CHECKING:  # the XML parser's module: only a new goal state needs it
    from wire.extensions_config import ExtensionsConfig

Source = Literal["ExtensionsConfig", "FastTrack"]
_STATES: tuple[PluginState, ...] = ("enabled", "disabled", "uninstall")
# What this agent implements of what a goal state may require (`requiredFeatures`).
SUPPORTED_REQUIRED_FEATURES = frozenset({"MultipleExtensionsPerHandler"})


class ExtensionsGoalState(NamedTuple):
    """What the handlers on this VM must be, from one of the two sources."""

    id: str  # "incarnation_<n>" (ExtensionsConfig) or "etag_<etag>" (vmSettings)
    source: Source
    created_ticks: int | None  # .NET ticks; None when the document does not say
    plugins: tuple[Plugin, ...]
    on_hold: bool
    required_features: tuple[str, ...]
    in_svd_seq_no: str | None
    status_upload_blob: str | None
    status_blob_type: str

    @property
    def unsupported_features(self) -> tuple[str, ...]:
        """Required features this agent lacks: the goal state then fails with 2001."""
        return tuple(f for f in self.required_features if f not in SUPPORTED_REQUIRED_FEATURES)


def created_on_ticks(extensions_config: ExtensionsConfig) -> int | None:
    """`InVMGoalStateMetaData@createdOnTicks` of an ExtensionsConfig (None when absent)."""
    from wire.xmldoc import attribute, find, parse_xml

    root = parse_xml(extensions_config.xml, "ExtensionsConfig")
    metadata = find(root, "InVMGoalStateMetaData")
    value = attribute(metadata, "createdOnTicks") if metadata is not None else None
    # ASCII digits, as many as .NET ticks have: isdigit() also holds for "²", which int()
    # refuses, and int() refuses more than 4300 digits.
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
        return None
    return int(value)


def from_extensions_config(config: ExtensionsConfig, incarnation: str, *,
                           on_hold: bool = False) -> ExtensionsGoalState:
    """The goal state of an ExtensionsConfig (of goal state `incarnation`)."""
    return ExtensionsGoalState(
        id=f"incarnation_{incarnation}", source="ExtensionsConfig",
        created_ticks=created_on_ticks(config), plugins=config.plugins, on_hold=on_hold,
        required_features=tuple(name for name, _ in config.required_features),
        in_svd_seq_no=config.in_svd_seq_no, status_upload_blob=config.status_upload_blob,
        status_blob_type=config.status_blob_type)


def parse_vm_settings(document: Mapping[str, Any], etag: str) -> ExtensionsGoalState | None:
    """The goal state of a vmSettings answer; None when its source is "Fabric" (the host
    only mirrors ExtensionsConfig then). A malformed document raises DocumentError."""
    doc = "vmSettings"
    source = document.get("extensionGoalStatesSource")
    if source == "Fabric":
        return None
    ticks = document.get("extensionsLastModifiedTickCount")
    features = document.get("requiredFeatures") or []
    if not isinstance(features, list):
        raise DocumentError(doc, "requiredFeatures is not a list")
    blob = document.get("statusUploadBlob") or {}
    if not isinstance(blob, dict):
        raise DocumentError(doc, "statusUploadBlob is not an object")
    entries = document.get("extensionGoalStates") or []
    if not isinstance(entries, list):
        raise DocumentError(doc, "extensionGoalStates is not a list")
    blob_type = "PageBlob" if str(blob.get("statusBlobType", "")).lower() == "pageblob" \
        else "BlockBlob"
    seq = document.get("inSvdSeqNo")
    return ExtensionsGoalState(
        id=f"etag_{etag}", source="FastTrack",
        created_ticks=int(ticks) if isinstance(ticks, int) else None,
        plugins=tuple(_vm_settings_plugin(entry) for entry in entries),
        on_hold=document.get("onHold") is True,
        required_features=tuple(str(f.get("name")) for f in features if isinstance(f, dict)),
        in_svd_seq_no=str(seq) if seq is not None else None,
        status_upload_blob=blob.get("value"), status_blob_type=blob_type)


def _vm_settings_plugin(entry: Any) -> Plugin:
    doc = "vmSettings"
    if not isinstance(entry, dict) or not entry.get("name") or not entry.get("version"):
        raise DocumentError(doc, "an extensionGoalStates entry has no name or version")
    name, version = str(entry["name"]), str(entry["version"])
    state = str(entry.get("state", "enabled")).lower()
    if state not in _STATES:
        raise DocumentError(doc, f"{name} has state={entry.get('state')!r}; expected one of "
                            f"{', '.join(_STATES)}")
    multi = entry.get("isMultiConfig") is True
    invalid = None
    settings: tuple[ExtensionSettings, ...] = ()
    level = 0
    try:
        settings, level = _vm_settings_settings(entry, name, state, multi)
    except _Invalid as err:
        invalid = str(err)
    additional = entry.get("additionalLocations") or []
    return Plugin(
        name=name, version=version, state=state,
        location=entry.get("location"),
        failover_location=entry.get("failoverLocation") or entry.get("failoverlocation"),
        additional_locations=tuple(str(u) for u in additional if u) if isinstance(
            additional, list) else (),
        auto_upgrade=entry.get("autoUpgrade") is True, is_json=entry.get("isJson") is not False,
        encoded_signature=entry.get("encodedSignature"), is_multi_config=multi,
        settings=settings, dependency_level=level, invalid_reason=invalid)


class _Invalid(Exception):
    """This handler's entry is inconsistent; the others still run."""


def _vm_settings_settings(entry: Mapping[str, Any], name: str, state: PluginState,
                          multi: bool) -> tuple[tuple[ExtensionSettings, ...], int]:
    listed = entry.get("settings") or []
    if not isinstance(listed, list):
        raise _Invalid(f"{name}: 'settings' is not a list")
    if not multi and len(listed) > 1:
        raise _Invalid(f"{name}: a single-config extension with {len(listed)} settings")
    levels: dict[str | None, tuple[int, tuple[DependsOnExtension, ...]]] = {}
    depends = entry.get("dependsOn") or []
    if not isinstance(depends, list):
        raise _Invalid(f"{name}: 'dependsOn' is not a list")
    for block in depends:
        if not isinstance(block, dict):
            raise _Invalid(f"{name}: a dependsOn entry is not an object")
        targets = block.get("dependsOnExtension") or block.get("DependsOnExtension") or []
        key = block.get("name") if multi else None
        if not isinstance(targets, list) or not isinstance(key, str | None):
            raise _Invalid(f"{name}: a dependsOn entry's name or dependsOnExtension is not "
                           "a string and a list")
        try:
            level = int(block.get("dependencyLevel") or 0)
        except (TypeError, ValueError, OverflowError):
            raise _Invalid(f"{name}: dependencyLevel={block.get('dependencyLevel')!r} is not "
                           "a number") from None
        levels[key] = (level, tuple(DependsOnExtension(str(t.get("handler")), t.get("extension"))
                                    for t in targets if isinstance(t, dict)))
    result = []
    for item in listed:
        if not isinstance(item, dict):
            raise _Invalid(f"{name}: a settings entry is not an object")
        public = item.get("publicSettings")
        try:
            public_value = json.loads(public) if isinstance(public, str) else public
        except ValueError:
            raise _Invalid(f"{name}: publicSettings is not JSON") from None
        protected = item.get("protectedSettings")
        thumbprint = item.get("protectedSettingsCertThumbprint")
        if protected is not None and thumbprint is None:
            raise _Invalid(f"{name}: protected settings without a certificate thumbprint")
        ext_name = str(item.get("extensionName")) if multi else None
        ext_state = str(item.get("extensionState", "enabled")).lower() if multi else state
        if ext_state not in _STATES:
            raise _Invalid(f"{name}: extension {ext_name} has unknown state {ext_state!r}")
        seq = item.get("seqNo") if multi else entry.get("settingsSeqNo")
        if not isinstance(seq, int):
            raise _Invalid(f"{name}: seqNo {seq!r} is not a number")
        level, depends = levels.get(ext_name, (0, ()))
        result.append(ExtensionSettings(
            name=ext_name, seq_no=seq, state=ext_state,
            settings_json=None, public_settings=public_value,
            protected_settings=protected if isinstance(protected, str) else None,
            protected_settings_cert_thumbprint=thumbprint if isinstance(thumbprint, str)
            else None, dependency_level=level, depends_on=depends))
    handler_level = levels.get(None, (0, ()))[0]
    if multi and result:
        handler_level = min(s.dependency_level for s in result)
    return tuple(result), handler_level


def choose(candidates: Sequence[ExtensionsGoalState | None],
           handled_ticks: int | None = None) -> ExtensionsGoalState | None:
    """The goal state to act on: the newest candidate by creation time (ExtensionsConfig on
    a tie, or when a time is missing), and None when every candidate is older than the one
    already handled (`handled_ticks`): the agent never goes back to an older goal state."""
    found = [c for c in candidates if c is not None]
    if not found:
        return None

    def key(state: ExtensionsGoalState) -> tuple[int, int]:
        return (state.created_ticks or 0, 1 if state.source == "ExtensionsConfig" else 0)

    newest = max(found, key=key)
    if handled_ticks is not None and newest.created_ticks is not None \
            and newest.created_ticks < handled_ticks:
        return None
    return newest
