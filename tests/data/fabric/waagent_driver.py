"""Drive the published Azure Linux agent (Debian package waagent 2.7.3) against the fabric.

Run by the system python3 (the agent's own interpreter), not the venv:

    python3 waagent_driver.py AGENT_DIST_PACKAGES LIB_DIR WIRE_PORT HOSTPLUGIN_PORT

The agent is used as a library: its WireServer endpoint is 127.0.0.1, and its
HTTP layer is wrapped so that the fixed ports it uses (80 for the WireServer,
32526 for the HostGAPlugin) go to the fabric's ports instead. Its Lib.Dir is
LIB_DIR; nothing else of the host is touched. Prints one JSON object.
"""

import json
import os
import sys

agent_path, lib_dir, wire_port, hostplugin_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, agent_path)

import azurelinuxagent.common.conf as conf  # noqa: E402
import azurelinuxagent.common.logger as logger  # noqa: E402
from azurelinuxagent.common.protocol import hostplugin  # noqa: E402
from azurelinuxagent.common.protocol.restapi import ProvisionStatus, VMStatus  # noqa: E402
from azurelinuxagent.common.protocol.wire import WireProtocol  # noqa: E402
from azurelinuxagent.common.utils import restutil  # noqa: E402

ENDPOINT = "127.0.0.1"
PORTS = {None: wire_port, 80: wire_port, hostplugin.HOST_PLUGIN_PORT: hostplugin_port}

conf.__conf__.values["Lib.Dir"] = lib_dir
conf.__conf__.values["OS.OpensslPath"] = "openssl"
logger.add_logger_appender(logger.AppenderType.STDOUT, logger.LogLevel.INFO)
# The agent logs to stdout; the JSON result goes to the real stdout at the end.
result_stream = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

_original_http_request = restutil._http_request


def _to_fabric(method, host, rel_uri, port=None, *args, **kwargs):
    if host == ENDPOINT:
        port = PORTS.get(port, port)
    elif host not in ("localhost",):
        raise RuntimeError("the driver refuses to reach {0}".format(host))
    return _original_http_request(method, host, rel_uri, port, *args, **kwargs)


restutil._http_request = _to_fabric

protocol = WireProtocol(ENDPOINT)
protocol.detect()  # versions, transport certificate, goal state and all sub-documents, certificates

report = {"certs": sorted(c.thumbprint for c in protocol.get_certs().certificates)}
report["incarnation"] = protocol.get_incarnation()
vminfo = protocol.get_vminfo()
report["vm_name"] = vminfo.vmName
report["role_instance"] = vminfo.roleInstanceName
egs = protocol.get_extensions_goal_state()
report["extensions"] = [
    {"name": h.name, "version": h.version, "state": h.state,
     "settings": [{"public": s.publicSettings, "thumbprint": s.certificateThumbprint,
                   "protected": s.protectedSettings} for s in h.settings]}
    for h in egs.extensions
]
report["extensions_source"] = egs.source
report["status_upload_blob"] = egs.status_upload_blob

# Extension manifests through the HostGAPlugin (the agent's fallback channel) and directly.
manifests = []
for handler in egs.extensions:
    manifest = protocol.client.fetch_manifest_through_host(handler.manifest_uris[0])
    manifests.append(manifest)
report["manifests"] = manifests

# Packages named by the manifest (via get_ext_manifest), downloaded directly and through the HostGAPlugin.
packages = []
for handler in egs.extensions:
    for pkg in protocol.get_ext_handler_pkgs(handler).versions:
        direct = os.path.join(lib_dir, "direct-{0}.zip".format(handler.name))
        through_host = os.path.join(lib_dir, "host-{0}.zip".format(handler.name))
        ok_direct = protocol.download_ext_handler_pkg(pkg.uris[0], direct)
        ok_host = protocol._download_ext_handler_pkg_through_host(pkg.uris[0], through_host)
        packages.append({"version": pkg.version, "uri": pkg.uris[0], "direct": ok_direct, "host": ok_host,
                         "same": open(direct, "rb").read() == open(through_host, "rb").read()})
report["packages"] = packages

protocol.report_provision_status(ProvisionStatus(status="NotReady", subStatus="Provisioning", description="Starting"))
protocol.report_provision_status(ProvisionStatus(status="Ready"))
protocol.client.report_role_prop("0123456789ABCDEF0123456789ABCDEF01234567")

# Twice: the test may fail the first HostGAPlugin upload to see the direct fallback.
protocol.report_vm_status(VMStatus(status="Ready", message="Guest Agent is running"))
protocol.report_vm_status(VMStatus(status="Ready", message="Guest Agent is running"))
report["files"] = sorted(os.listdir(lib_dir))
result_stream.write(json.dumps(report))
result_stream.flush()
