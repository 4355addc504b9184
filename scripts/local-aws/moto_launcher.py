#!/usr/bin/env python3
"""moto server (pinned 5.1.22) with a few small, documented patches for backplan's tests.

Run by scripts/local-aws/start inside the project virtualenv; not meant to be imported.

Unpatched moto completes every snapshot and AMI at once, gives an AMI one snapshot of a
made-up 15 GiB volume whatever the instance's volumes, reports Progress "100%" always and
never fails a snapshot. The patches below (all on moto.ec2, applied at import time) add:

  P1  pending for N describes: AMIs made by CreateImage/CopyImage and snapshots made by
      CreateSnapshot(s)/CopySnapshot/CreateImage/CopyImage stay `pending` for the first N
      DescribeImages / DescribeSnapshots calls that return them, with a rising Progress
      (100*k/(N+1) %), then become `available` / `completed`.  N comes from
      BACKPLAN_MOTO_PENDING_DESCRIBES (default 0 = moto's instant behaviour).
      When an AMI becomes final its snapshots are made final too.
      RegisterImage AMIs (test fixtures) stay instantly available.
  P2  injected snapshot failure: a snapshot of a volume carrying the tag
      BACKPLAN_MOTO_FAIL_TAG (default `backplan-test-fail=snapshot`; also honoured on the
      snapshot itself) ends in state `error` with StateMessage BACKPLAN_MOTO_FAIL_MESSAGE;
      an AMI holding such a snapshot ends `failed` with a StateReason.
  P3  one snapshot per attached volume: CreateImage snapshots every volume in the instance's
      block device mapping (real size/type, DeleteOnTermination kept) and lists them in the
      image's BlockDeviceMappings; CopyImage reproduces the source's mapping in the target
      region.  CreateImage honours TagSpecifications of ResourceType `snapshot` (moto raises
      NotImplementedError) and CopyImage honours TagSpecifications / CopyImageTags (moto
      ignores them).
  P4  responses: DescribeSnapshots renders the real Progress and StateMessage (moto
      hard-codes 100% and omits the message); CreateSnapshot(s) answer Progress 0% (not 60%).
  P5  terminating an instance deletes the network interfaces RunInstances made for it, as in
      AWS (moto keeps them `in-use`): their private IPs are free again, and an Elastic IP on
      them is disassociated. That is what a restore reusing the old private IP meets once the
      old machine is gone.

Control endpoints (same port, not AWS API):
  GET  /__backplan/health   -> 200 "ok" once the EC2 backend is warm (readiness probe)
  GET  /__backplan/config   -> current settings as JSON
  POST /__backplan/config   -> JSON object with any of pending_describes, fail_tag,
                               fail_message; applies to resources created afterwards
Plus moto's own /moto-api/ (e.g. POST /moto-api/reset wipes all state).

NoReboot is accepted and ignored, as real "no reboot" has nothing to simulate here.
"""

import argparse
import json
import os
import signal
import sys
import threading

# Must be set before moto reads it (moto reads it lazily, but be explicit and early).
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.ec2.models import amis as m_amis  # noqa: E402
from moto.ec2.models import elastic_block_store as m_ebs  # noqa: E402
from moto.ec2.models import instances as m_instances  # noqa: E402
from moto.ec2.responses import amis as r_amis  # noqa: E402
from moto.ec2.responses import elastic_block_store as r_ebs  # noqa: E402

Ami = m_amis.Ami
AmiBackend = m_amis.AmiBackend
Snapshot = m_ebs.Snapshot
EBSBackend = m_ebs.EBSBackend


def _env_int(name, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        sys.exit(f"moto_launcher: {name}={raw!r} is not an integer")
    if value < 0:
        sys.exit(f"moto_launcher: {name} must be >= 0")
    return value


CONFIG = {
    "pending_describes": _env_int("BACKPLAN_MOTO_PENDING_DESCRIBES", 0),
    "fail_tag": os.environ.get("BACKPLAN_MOTO_FAIL_TAG", "backplan-test-fail=snapshot"),
    "fail_message": os.environ.get(
        "BACKPLAN_MOTO_FAIL_MESSAGE", "Snapshot creation failed: injected by backplan test launcher"
    ),
}

_LOCK = threading.RLock()
_TLS = threading.local()  # marks "this thread is serving a DescribeImages/DescribeSnapshots call"


def _fail_tag():
    key, _, value = CONFIG["fail_tag"].partition("=")
    return key, value


def _has_fail_tag(resource):
    key, value = _fail_tag()
    if not key:
        return False
    try:
        tags = resource.get_tags()
    except Exception:  # resource already deleted
        return False
    return any(t.get("key") == key and (not value or t.get("value") == value) for t in tags)


# --------------------------------------------------------------------------- P1/P2 state machine

# Class-level defaults so that every Snapshot/Ami (including moto's own) renders sanely.
Snapshot.progress = "100%"
Snapshot.state_message = None
Ami.state_reason = None


def _track(obj, fail_source=None):
    """Put a freshly created snapshot or AMI under the pending/failure simulation."""
    obj._bp_total = CONFIG["pending_describes"]
    obj._bp_seen = 0
    obj._bp_done = False
    if isinstance(obj, Snapshot):
        # Decide now whether the source volume carries the fail tag: the volume may be gone later.
        obj._bp_fail = _has_fail_tag(fail_source if fail_source is not None else obj.volume)
        obj.status = "pending"
        obj.progress = "0%"
    else:
        obj.state = "pending"
    if obj._bp_total == 0:
        _finish(obj)


def _snapshot_fails(snap):
    return getattr(snap, "_bp_fail", False) or _has_fail_tag(snap)


def _finish(obj):
    obj._bp_done = True
    if isinstance(obj, Snapshot):
        if _snapshot_fails(obj):
            obj.status = "error"
            obj.state_message = CONFIG["fail_message"]
        else:
            obj.status = "completed"
            obj.progress = "100%"
        return
    snaps = [s for _, s, _ in getattr(obj, "_bp_bdm", [])] or [obj.ebs_snapshot]
    for s in snaps:
        if getattr(s, "_bp_total", None) is not None and not s._bp_done:
            _finish(s)
    failed = [s for s in snaps if s.status == "error"]
    if failed:
        obj.state = "failed"
        obj.state_reason = {
            "Code": "Server.InternalError",
            "Message": f"Snapshot {failed[0].id} failed: {failed[0].state_message or CONFIG['fail_message']}",
        }
    else:
        obj.state = "available"


def _tick(obj):
    if getattr(obj, "_bp_total", None) is None or obj._bp_done:
        return
    obj._bp_seen += 1
    if obj._bp_seen <= obj._bp_total:
        if isinstance(obj, Snapshot):
            obj.progress = f"{obj._bp_seen * 100 // (obj._bp_total + 1)}%"
    else:
        _finish(obj)


# Tick only for the outermost backend describe of an API DescribeImages/DescribeSnapshots call;
# moto also calls describe_images internally (RunInstances, CopyImage, ...), which must not count.
def _wrap_describe_response(cls, name, flag):
    orig = getattr(cls, name)

    def wrapper(self):
        setattr(_TLS, flag, True)
        try:
            return orig(self)
        finally:
            setattr(_TLS, flag, False)

    wrapper.__doc__ = orig.__doc__
    setattr(cls, name, wrapper)


def _wrap_describe_backend(cls, name, flag):
    orig = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        result = orig(self, *args, **kwargs)
        if getattr(_TLS, flag, False):
            setattr(_TLS, flag, False)
            with _LOCK:
                for obj in result:
                    _tick(obj)
        return result

    setattr(cls, name, wrapper)


_wrap_describe_response(r_amis.AmisResponse, "describe_images", "images")
_wrap_describe_backend(AmiBackend, "describe_images", "images")
_wrap_describe_response(r_ebs.ElasticBlockStore, "describe_snapshots", "snapshots")
_wrap_describe_backend(EBSBackend, "describe_snapshots", "snapshots")

# --------------------------------------------------------------------------- snapshots

_orig_create_snapshot = EBSBackend.create_snapshot
_orig_copy_snapshot = EBSBackend.copy_snapshot


def _create_snapshot(self, volume_id, description, owner_id=None, from_ami=None):
    snap = _orig_create_snapshot(self, volume_id, description, owner_id=owner_id, from_ami=from_ami)
    # AMI snapshots (from_ami) are handled by the AMI patches; RegisterImage's stay instant.
    if from_ami is None:
        with _LOCK:
            _track(snap)
    return snap


def _copy_snapshot(self, source_snapshot_id, source_region, description, kms_key_id):
    snap = _orig_copy_snapshot(self, source_snapshot_id, source_region, description, kms_key_id)
    with _LOCK:
        _track(snap)
    return snap


EBSBackend.create_snapshot = _create_snapshot
EBSBackend.copy_snapshot = _copy_snapshot

# --------------------------------------------------------------------------- AMIs (P3)

_orig_bdm = Ami.block_device_mappings


def _ami_bdm(self):
    entries = getattr(self, "_bp_bdm", None)
    if not entries:
        return _orig_bdm.fget(self)
    return [
        {
            "DeviceName": device,
            "Ebs": {
                "SnapshotId": snap.id,
                "VolumeSize": snap.volume.size,
                "DeleteOnTermination": bool(delete_on_termination),
                "VolumeType": snap.volume.volume_type,
                "Encrypted": bool(snap.encrypted),
            },
        }
        for device, snap, delete_on_termination in entries
    ]


Ami.block_device_mappings = property(_ami_bdm)


def _drop_placeholder_snapshot(backend, ami):
    # Ami.__init__ snapshots a throwaway 15 GiB volume; replace it with the real ones.
    backend.snapshots.pop(ami.ebs_snapshot.id, None)


def _apply_snapshot_tags(backend, snaps, tags):
    for snap in snaps:
        for tag in tags:
            backend.create_tags([snap.id], {tag["Key"]: tag["Value"]})


def _split_tag_specs(tag_specifications):
    snapshot_tags, rest = [], []
    for spec in tag_specifications or []:
        if spec.get("ResourceType") == "snapshot":
            snapshot_tags += spec.get("Tags", [])
        else:
            rest.append(spec)
    return snapshot_tags, rest


_orig_create_image = AmiBackend.create_image


def _create_image(self, instance_id, name, description, tag_specifications):
    snapshot_tags, other_specs = _split_tag_specs(tag_specifications)
    ami = _orig_create_image(self, instance_id, name, description, tag_specifications=other_specs)
    instance = self.get_instance(instance_id)
    entries = []
    for device, bdt in sorted(instance.block_device_mapping.items()):
        volume = self.get_volume(bdt.volume_id)
        snap = _orig_create_snapshot(
            self,
            volume.id,
            f"Created by CreateImage({instance_id}) for {ami.id}",
            owner_id=ami.owner_id,
            from_ami=ami.id,
        )
        entries.append((device, snap, bdt.delete_on_termination))
    with _LOCK:
        if entries:
            _drop_placeholder_snapshot(self, ami)
            ami._bp_bdm = entries
            root = [s for d, s, _ in entries if d == instance.root_device_name]
            ami.ebs_snapshot = root[0] if root else entries[0][1]
            ami.root_device_name = instance.root_device_name
        ami.root_device_type = "ebs"
        snaps = [s for _, s, _ in entries] or [ami.ebs_snapshot]
        _apply_snapshot_tags(self, snaps, snapshot_tags)
        for snap in snaps:
            _track(snap)
        _track(ami)
    return ami


_orig_copy_image = AmiBackend.copy_image


def _copy_image(self, source_image_id, source_region, name=None, description=None):
    from moto.ec2.models import ec2_backends

    ami = _orig_copy_image(self, source_image_id, source_region, name, description)
    source = ec2_backends[self.account_id][source_region].amis.get(source_image_id)
    entries = []
    for device, src_snap, delete_on_termination in getattr(source, "_bp_bdm", None) or []:
        volume = self.create_volume(
            size=src_snap.volume.size,
            zone_name=f"{self.region_name}a",
            volume_type=src_snap.volume.volume_type,
        )
        snap = _orig_create_snapshot(
            self,
            volume.id,
            f"Copied for DestinationAmi {ami.id} from SourceAmi {source_image_id} "
            f"for SourceSnapshot {src_snap.id}",
            owner_id=ami.owner_id,
            from_ami=ami.id,
        )
        self.delete_volume(volume.id)
        entries.append((device, snap, delete_on_termination))
    with _LOCK:
        if entries:
            _drop_placeholder_snapshot(self, ami)
            ami._bp_bdm = entries
            ami.ebs_snapshot = entries[0][1]
        if source is not None:
            ami.root_device_name = source.root_device_name
            ami.root_device_type = source.root_device_type
        snaps = [s for _, s, _ in entries] or [ami.ebs_snapshot]
        for snap in snaps:
            _track(snap, fail_source=snap)
        _track(ami)
    return ami


AmiBackend.create_image = _create_image
AmiBackend.copy_image = _copy_image

_orig_copy_image_response = r_amis.AmisResponse.copy_image


def _copy_image_response(self):
    result = _orig_copy_image_response(self)
    image_id = result.result["ImageId"]
    ami = self.ec2_backend.amis[image_id]
    tags = {}
    if str(self._get_param("CopyImageTags", "false")).lower() == "true":
        from moto.ec2.models import ec2_backends

        src_backend = ec2_backends[self.current_account][self._get_param("SourceRegion")]
        src = src_backend.amis.get(self._get_param("SourceImageId"))
        if src is not None:
            tags.update({t["key"]: t["value"] for t in src.get_tags()})
    snapshot_tags, specs = _split_tag_specs(self._get_param("TagSpecifications", []))
    for spec in specs:
        if spec.get("ResourceType") == "image":
            tags.update({t["Key"]: t["Value"] for t in spec.get("Tags", [])})
    if tags:
        ami.add_tags(tags)
    snaps = [s for _, s, _ in getattr(ami, "_bp_bdm", [])] or [ami.ebs_snapshot]
    _apply_snapshot_tags(self.ec2_backend, snaps, snapshot_tags)
    return result


r_amis.AmisResponse.copy_image = _copy_image_response

# --------------------------------------------------------------------------- P4 templates


def _patch_template(name, old, new):
    text = getattr(r_ebs, name)
    if old not in text:
        raise SystemExit(f"moto_launcher: moto changed {name}; update the patch (looked for {old!r})")
    setattr(r_ebs, name, text.replace(old, new))


_patch_template(
    "DESCRIBE_SNAPSHOTS_RESPONSE",
    "<progress>100%</progress>",
    "<progress>{{ snapshot.progress }}</progress>"
    "{% if snapshot.state_message %}<statusMessage>{{ snapshot.state_message }}</statusMessage>{% endif %}",
)
_patch_template("CREATE_SNAPSHOT_RESPONSE", "<progress>60%</progress>", "<progress>0%</progress>")
_patch_template("CREATE_SNAPSHOTS_RESPONSE", "<progress>60%</progress>", "<progress>0%</progress>")

# --------------------------------------------------------------------------- P5 network interfaces

Instance = m_instances.Instance
_orig_prep_nics = Instance.prep_nics
_orig_terminate = Instance.terminate


def _prep_nics(self, nic_spec, *args, **kwargs):
    given = {int(n.get("DeviceIndex", 0)) for n in nic_spec or [] if n.get("NetworkInterfaceId")}
    _orig_prep_nics(self, nic_spec, *args, **kwargs)
    for index, nic in self.nics.items():
        if index not in given:
            nic.delete_on_termination = True


def _terminate(self):
    doomed = [nic for nic in self.nics.values() if nic.delete_on_termination]
    for address in self.ec2_backend.addresses:
        if address.eni in doomed:
            self.ec2_backend.disassociate_address(association_id=address.association_id)
    return _orig_terminate(self)


Instance.prep_nics = _prep_nics
Instance.terminate = _terminate

# --------------------------------------------------------------------------- server


class ControlMiddleware:
    """Serves /__backplan/* and passes everything else to moto."""

    def __init__(self, app):
        self.app = app
        self.ready = threading.Event()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/__backplan/"):
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/__backplan/health":
            if not self.ready.is_set():
                return self._reply(start_response, "503 Service Unavailable", "warming up\n", "text/plain")
            return self._reply(start_response, "200 OK", "ok\n", "text/plain")
        if path == "/__backplan/config":
            if method == "POST":
                try:
                    length = int(environ.get("CONTENT_LENGTH") or 0)
                    update = json.loads(environ["wsgi.input"].read(length) or b"{}")
                    unknown = set(update) - set(CONFIG)
                    if unknown:
                        raise ValueError(f"unknown keys {sorted(unknown)}")
                    if "pending_describes" in update:
                        update["pending_describes"] = int(update["pending_describes"])
                        if update["pending_describes"] < 0:
                            raise ValueError("pending_describes must be >= 0")
                except (ValueError, TypeError) as exc:
                    return self._reply(start_response, "400 Bad Request", json.dumps({"error": str(exc)}))
                with _LOCK:
                    CONFIG.update(update)
            with _LOCK:
                body = json.dumps(CONFIG)
            return self._reply(start_response, "200 OK", body)
        return self._reply(start_response, "404 Not Found", json.dumps({"error": "unknown control path"}))

    @staticmethod
    def _reply(start_response, status, body, ctype="application/json"):
        data = body.encode()
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
        return [data]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--tag", help="ignored; lets the caller mark the command line (PID checks)")
    args = parser.parse_args(argv)

    from werkzeug.serving import make_server

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = ControlMiddleware(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, args.port, app, threaded=True)
    port = server.server_port
    os.environ["MOTO_PORT"] = str(port)

    def _stop(signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{port}\n")
        os.replace(tmp, args.port_file)

    # Warm the EC2 backend so the first real request is not the slow one.
    def _warm():
        from moto.ec2.models import ec2_backends

        ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].describe_regions()
        app.ready.set()

    threading.Thread(target=_warm, daemon=True).start()
    print(
        f"moto_launcher: moto {__import__('moto').__version__} on http://{args.host}:{port} "
        f"config={json.dumps(CONFIG)}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
