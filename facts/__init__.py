"""Read-only probes and gathered inputs: what the tasks decide from.

Modules (import the one you need; this package imports nothing heavy):
  ovf       ovf-env.xml: the typed OvfEnv, its parser, the password-free copy
  media     the provisioning DVD (or an image file): find it, read ovf-env.xml
  udf       a minimal read-only UDF reader for media without an ISO 9660 bridge
  hardware  VM id (DMI), kernel version, NICs
  disks     the resource disk, block devices, partition tables, filesystem signatures
  resource_disk  what is on the resource disk, for the disk tasks' verdict: our table mark,
            blkid, file listings (ntfsls, a read-only mount)
  mounts    mounts and active swaps, where a block device is mounted
  distro    distribution, family, init system, DHCP client, sshd unit, cloud-init
  users     UID_MIN, /etc/passwd, /etc/group of the root
  store     the facts store (JSON under <Lib.Dir>/facts), fingerprints, redacted views

Facts read; they never change the machine (DESIGN rule 1). The only writes
are the documented caches: the ovf-env.xml copy and the facts store, both
through system.FileSystem.
"""
