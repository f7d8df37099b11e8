"""ExtensionsConfig and extension/agent version manifests (PLATFORM.md section 8).

A document that is not XML, or lacks what every ExtensionsConfig has, raises
DocumentError. A single handler whose settings are inconsistent (two RuntimeSettings,
settings for another version, single- and multi-config mixed, ...) does not spoil
the others: it is parsed with `invalid_reason` set, so the extension tasks can report
that handler as failed and still run the rest, as the published agent does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from wire import decode_text, parse_json
from wire.errors import DocumentError
from wire.handlers import (
    DependsOnExtension,
    ExtensionSettings,
    ManifestVersion,
    Plugin,
    PluginState,
    PluginVersionManifest,
)
from wire.xmldoc import (
    Element,
    attribute,
    child,
    children,
    find,
    flag,
    parse_xml,
    required_attribute,
    text_at,
)

BlobType = Literal["BlockBlob", "PageBlob"]
_STATES: tuple[PluginState, ...] = ("enabled", "disabled", "uninstall")


class GAFamily(NamedTuple):
    """An agent family (`AutoUpdate.GAFamily`) with its manifest URIs and RSM version."""

    name: str
    uris: tuple[str, ...]
    version: str | None = None
    is_version_from_rsm: bool = False
    is_vm_enabled_for_rsm_upgrades: bool = False


class ExtensionsConfig(NamedTuple):
    """The extension goal state of one incarnation."""

    incarnation: str | None
    ga_families: tuple[GAFamily, ...]
    plugins: tuple[Plugin, ...]
    status_upload_blob: str | None
    status_blob_type: BlobType
    in_vm_artifacts_profile_blob: str | None
    required_features: tuple[tuple[str, str | None], ...]
    in_svd_seq_no: str | None
    xml: str

    def ga_family(self, name: str) -> GAFamily | None:
        """The agent family by name (case-insensitive), e.g. `AutoUpdate.GAFamily=Prod`."""
        return next((f for f in self.ga_families if f.name.lower() == name.lower()), None)


def parse_extensions_config(text: str | bytes) -> ExtensionsConfig:
    """Parse an ExtensionsConfig document."""
    doc = "ExtensionsConfig"
    root = parse_xml(text, doc)
    if root.tag != "Extensions":
        raise DocumentError(doc, f"root element is <{root.tag}>, expected <Extensions>")
    families = tuple(_ga_family(element, doc) for element in
                     _grandchildren(root, "GuestAgentExtension/GAFamilies", "GAFamily"))
    settings_by_name: dict[str, list[Element]] = {}
    for element in _grandchildren(root, "PluginSettings", "Plugin"):
        name = required_attribute(element, "name", doc, "PluginSettings/Plugin")
        settings_by_name.setdefault(name.lower(), []).append(element)
    plugins = tuple(_plugin(element, settings_by_name, doc)
                    for element in _grandchildren(root, "Plugins", "Plugin"))
    blob = find(root, "StatusUploadBlob")
    blob_type: BlobType = "BlockBlob"
    if blob is not None and (attribute(blob, "statusBlobType") or "").lower() == "pageblob":
        blob_type = "PageBlob"  # anything but PageBlob is BlockBlob, as the platform means
    features = tuple((required_text_of(feature, "Name", doc), text_at(feature, "Value"))
                     for feature in _grandchildren(root, "RequiredFeatures", "RequiredFeature"))
    metadata = find(root, "InVMGoalStateMetaData")
    raw = text if isinstance(text, str) else decode_text(text)
    return ExtensionsConfig(
        incarnation=attribute(root, "goalStateIncarnation"),
        ga_families=families,
        plugins=plugins,
        status_upload_blob=text_at(root, "StatusUploadBlob"),
        status_blob_type=blob_type,
        in_vm_artifacts_profile_blob=text_at(root, "InVMArtifactsProfileBlob"),
        required_features=features,
        in_svd_seq_no=attribute(metadata, "inSvdSeqNo") if metadata is not None else None,
        xml=raw,
    )


def required_text_of(element: Element, path: str, doc: str) -> str:
    """Text that must be present below `element` (named in the error)."""
    value = text_at(element, path)
    if value is None:
        raise DocumentError(doc, f"<{element.tag}> has no {path}")
    return value


def _grandchildren(root: Element, path: str, name: str) -> list[Element]:
    parent = find(root, path)
    return children(parent, name) if parent is not None else []


def _ga_family(element: Element, doc: str) -> GAFamily:
    uris = tuple(u.text.strip() for u in _grandchildren(element, "Uris", "Uri")
                 if u.text and u.text.strip())
    return GAFamily(
        name=required_text_of(element, "Name", doc),
        uris=uris,
        version=text_at(element, "Version"),
        is_version_from_rsm=flag(text_at(element, "IsVersionFromRSM")),
        is_vm_enabled_for_rsm_upgrades=flag(text_at(element, "IsVMEnabledForRSMUpgrades")),
    )


def _state(value: str | None, where: str, doc: str) -> PluginState:
    text = (value or "enabled").lower()
    for state in _STATES:
        if text == state:
            return state
    raise DocumentError(doc, f"{where} has state={value!r}; expected one of {', '.join(_STATES)}")


def _plugin(element: Element, settings_by_name: Mapping[str, list[Element]],
            doc: str) -> Plugin:
    name = required_attribute(element, "name", doc, "Plugins/Plugin")
    where = f"Plugin {name}"
    version = required_attribute(element, "version", doc, where)
    state = _state(attribute(element, "state"), where, doc)
    additional = tuple(item.text.strip() for item in
                       _grandchildren(element, "additionalLocations", "additionalLocation")
                       if item.text and item.text.strip())
    settings: tuple[ExtensionSettings, ...] = ()
    dependency_level = 0
    multi = False
    invalid: str | None = None
    candidates = settings_by_name.get(name.lower(), [])
    try:
        settings, dependency_level, multi = _plugin_settings(name, version, state, candidates)
    except _InvalidHandler as err:
        invalid = str(err)
    return Plugin(
        name=name,
        version=version,
        state=state,
        location=attribute(element, "location"),
        failover_location=attribute(element, "failoverlocation"),
        additional_locations=additional,
        auto_upgrade=flag(attribute(element, "autoUpgrade")),
        is_json=flag(attribute(element, "isJson")),
        encoded_signature=attribute(element, "encodedSignature"),
        is_multi_config=multi,
        settings=settings,
        dependency_level=dependency_level,
        invalid_reason=invalid,
    )


class _InvalidHandler(Exception):
    """This handler's settings are inconsistent; the message says how."""


def _plugin_settings(name: str, version: str, state: PluginState,
                     candidates: list[Element]) -> tuple[tuple[ExtensionSettings, ...], int, bool]:
    if not candidates:
        return (), 0, False
    matching = [c for c in candidates if attribute(c, "version") == version]
    if not matching:
        found = ", ".join(sorted({attribute(c, "version") or "?" for c in candidates}))
        raise _InvalidHandler(f"PluginSettings for {name} are for version(s) {found}, "
                              f"not the requested {version}")
    if len(matching) > 1:
        raise _InvalidHandler(f"{name} {version} has {len(matching)} PluginSettings entries; "
                              "expected one")
    element = matching[0]
    single = children(element, "RuntimeSettings")
    multi = children(element, "ExtensionRuntimeSettings")
    if single and multi:
        raise _InvalidHandler(f"{name} has both RuntimeSettings and ExtensionRuntimeSettings: "
                              "a handler is either single- or multi-config")
    if len(single) > 1:
        raise _InvalidHandler(f"{name} has {len(single)} RuntimeSettings; expected one")
    depends = children(element, "DependsOn")
    levels: dict[str | None, tuple[int, tuple[DependsOnExtension, ...]]] = {}
    for block in depends:
        key = attribute(block, "name")
        if key in levels:
            what = f"extension {key}" if key else "the handler"
            raise _InvalidHandler(f"{name} has more than one DependsOn for {what}")
        levels[key] = (_dependency_level(block, name), _depends_on(block, name))
    handler_level, handler_depends = levels.get(None, (0, ()))
    result: list[ExtensionSettings] = []
    for item in single:
        result.append(_settings(item, None, state, handler_level, handler_depends, name))
    for item in multi:
        ext_name = attribute(item, "name")
        if ext_name is None:
            raise _InvalidHandler(f"{name}: an ExtensionRuntimeSettings has no name")
        ext_state = _extension_state(attribute(item, "state"), name, ext_name)
        level, depends_on = levels.get(ext_name, (0, ()))
        result.append(_settings(item, ext_name, ext_state, level, depends_on, name))
    names = [s.name for s in result if s.name is not None]
    if len(names) != len(set(names)):
        raise _InvalidHandler(f"{name} has two ExtensionRuntimeSettings with the same name")
    return tuple(result), handler_level, bool(multi)


def _extension_state(value: str | None, handler: str, extension: str) -> PluginState:
    text = (value or "enabled").lower()
    for state in _STATES:
        if text == state:
            return state
    raise _InvalidHandler(f"{handler}: extension {extension} has unknown state {value!r}")


def _dependency_level(block: Element, handler: str) -> int:
    value = attribute(block, "dependencyLevel")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        raise _InvalidHandler(f"{handler}: DependsOn dependencyLevel={value!r} is not a "
                              "number") from None


def _depends_on(block: Element, handler: str) -> tuple[DependsOnExtension, ...]:
    result = []
    for item in children(block, "DependsOnExtension"):
        target = attribute(item, "handler")
        if target is None:
            raise _InvalidHandler(f"{handler}: a DependsOnExtension has no handler attribute")
        result.append(DependsOnExtension(target, attribute(item, "extension")))
    return tuple(result)


def _settings(item: Element, ext_name: str | None, state: PluginState, level: int,
              depends_on: tuple[DependsOnExtension, ...], handler: str) -> ExtensionSettings:
    what = f"{handler}" + (f" extension {ext_name}" if ext_name else "")
    seq_text = attribute(item, "seqNo")
    digits = seq_text.removeprefix("-") if seq_text is not None else ""
    # isascii: isdigit() also holds for "²", which int() refuses; removeprefix, not lstrip:
    # "--1" is not a number either.
    if seq_text is None or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise _InvalidHandler(f"{what}: seqNo={seq_text!r} is not a number")
    body = (item.text or "").strip() or None
    handler_settings: Mapping[str, Any] = {}
    if body is not None:
        try:
            decoded = parse_json(body, f"{what} settings")
        except DocumentError as err:
            # This handler's only: the others still run (see the module's docstring).
            raise _InvalidHandler(str(err)) from None
        runtime = decoded.get("runtimeSettings") if isinstance(decoded, dict) else None
        if not isinstance(runtime, list) or len(runtime) != 1 or not isinstance(runtime[0], dict):
            raise _InvalidHandler(f"{what}: settings must hold exactly one runtimeSettings entry")
        found = runtime[0].get("handlerSettings", {})
        if not isinstance(found, dict):
            raise _InvalidHandler(f"{what}: handlerSettings is not an object")
        handler_settings = found
    protected = handler_settings.get("protectedSettings")
    thumbprint = handler_settings.get("protectedSettingsCertThumbprint")
    return ExtensionSettings(
        name=ext_name,
        seq_no=int(seq_text),
        state=state,
        settings_json=body,
        public_settings=handler_settings.get("publicSettings"),
        protected_settings=protected if isinstance(protected, str) else None,
        protected_settings_cert_thumbprint=thumbprint if isinstance(thumbprint, str) else None,
        dependency_level=level,
        depends_on=depends_on,
    )


# -- manifests ------------------------------------------------------------------------------

def parse_manifest(text: str | bytes) -> PluginVersionManifest:
    """Parse a PluginVersionManifest (extension or agent family manifest)."""
    doc = "PluginVersionManifest"
    root = parse_xml(text, doc)
    if root.tag != doc:
        raise DocumentError(doc, f"root element is <{root.tag}>, expected <{doc}>")
    versions: list[ManifestVersion] = []
    for section, internal in (("Plugins", False), ("InternalPlugins", True)):
        parent = child(root, section)
        for element in children(parent, "Plugin") if parent is not None else []:
            version = required_text_of(element, "Version", doc)
            uris = tuple(u.text.strip() for u in _grandchildren(element, "Uris", "Uri")
                         if u.text and u.text.strip())
            versions.append(ManifestVersion(
                version, uris, internal,
                flag(text_at(element, "DisallowMajorVersionUpgrade"))))
    return PluginVersionManifest(tuple(versions))


def parse_artifacts_profile(text: str | bytes) -> Mapping[str, Any]:
    """The InVMArtifactsProfile blob (JSON); `{"onHold": true}` pauses extension handling."""
    decoded = parse_json(text or "{}", "InVMArtifactsProfile")
    if not isinstance(decoded, dict):
        raise DocumentError("InVMArtifactsProfile", "not a JSON object")
    return decoded


def is_on_hold(profile: Mapping[str, Any]) -> bool:
    """True when the artifacts profile asks to pause extension handling."""
    value = profile.get("onHold")
    return value is True or (isinstance(value, str) and value.lower() == "true")
