"""The validating admission webhook: Kopf's webhook server (TLS) and its handlers, which run the
cross-object checks of mailfleet.operator.decide.admission on objects read from the API server.

Imported (and so registered with Kopf) only when `mailfleet operator --webhook-listen` is given;
its options are read from Kopf's memo at startup (settings.Settings.webhook), so they can be set
any time before Kopf runs, and with none set the webhook server stays off.
The ValidatingWebhookConfiguration is the chart's (templates/webhook.yaml); the operator never
creates one. The certificate is either provided (cert-manager's Secret mounted as a directory:
tls.crt, tls.key, ca.crt; cert-manager injects the CA) or managed here: a CA and a server
certificate kept in a kubernetes.io/tls Secret that every replica shares, renewed a month
before expiry, with the CA put into the configuration's caBundle.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kopf

from mailfleet.operator.api import naming
from mailfleet.operator.api.conditions import now_utc
from mailfleet.operator.api.crd_models import GROUP, VERSION
from mailfleet.operator.clients import kube
from mailfleet.operator.decide import admission, webhookcerts
from mailfleet.operator.handlers import login_fn
from mailfleet.operator.settings import Memo, WebhookOptions, WebhookRuntime

log = logging.getLogger("mailfleet.operator.webhook")

WEBHOOK_CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
CHECK_EVERY = 6 * 3600.0


__all__ = ["WebhookOptions"]


# --- certificate ---------------------------------------------------------------------------


def bundle_of(secret: Mapping[str, Any] | None) -> webhookcerts.CertBundle | None:
    if secret is None:
        return None
    data = secret.get("data") or {}

    def text(key: str) -> str:
        return base64.b64decode(data.get(key) or "").decode(errors="replace")

    return webhookcerts.CertBundle(ca=text("ca.crt"), cert=text("tls.crt"), key=text("tls.key"))


def secret_manifest(
    name: str, namespace: str, bundle: webhookcerts.CertBundle, resource_version: str | None
) -> dict[str, Any]:
    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/managed-by": naming.MANAGER},
    }
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta,
        "data": {"ca.crt": b64(bundle.ca), "tls.crt": b64(bundle.cert), "tls.key": b64(bundle.key)},
    }


async def ensure_certificate(
    api: kube.KubeClient, opts: WebhookOptions
) -> tuple[webhookcerts.CertBundle, webhookcerts.CertBundle | None]:
    """The Secret's certificate, issued (or renewed) first if needed: (current, replaced)."""
    assert opts.tls_secret is not None
    for _ in range(5):
        secret = await api.get(kube.SECRETS, opts.namespace, opts.tls_secret)
        old = bundle_of(secret)
        reason = webhookcerts.renewal_reason(old, opts.names, now_utc())
        if reason is None:
            assert old is not None
            return old, None
        log.info("webhook certificate Secret %s: issuing one (%s)", opts.tls_secret, reason)
        new = webhookcerts.issue(opts.names, now_utc())
        if secret is None:
            manifest = secret_manifest(opts.tls_secret, opts.namespace, new, None)
            if await api.create(kube.SECRETS, manifest) is None:
                continue  # another replica made it first: use theirs
            return new, None
        # A JSON patch guarded by the resourceVersion: renewed once even when the replicas race
        # (and no `update` verb needed beside the operator's create/patch on Secrets).
        data = secret_manifest(opts.tls_secret, opts.namespace, new, None)["data"]
        version = str(secret["metadata"]["resourceVersion"])
        try:
            await api.request(
                "PATCH",
                kube.SECRETS.path(opts.namespace, opts.tls_secret),
                body=[
                    {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                    {"op": "replace", "path": "/data", "value": data},
                ],
                content_type="application/json-patch+json",
                kind="Secret",
                verb="patch",
            )
        except kube.ApiError as e:
            if e.status in (409, 422):
                continue  # another replica renewed it: read theirs
            raise
        return new, old
    raise RuntimeError(f"webhook certificate Secret {opts.tls_secret}: kept changing under us")


def write_files(directory: Path, bundle: webhookcerts.CertBundle) -> None:
    """Written whole then renamed, so the server never loads half a certificate."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, text in (("ca.crt", bundle.ca), ("tls.key", bundle.key), ("tls.crt", bundle.cert)):
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(directory / name)


async def keep_ca_bundle(api: kube.KubeClient, configuration: str, ca: str) -> None:
    """Every webhook of the configuration trusts `ca` (and the still valid CAs it trusted
    before: webhookcerts.trusted_cas)."""
    status, vwc = await api.request("GET", f"{WEBHOOK_CONFIGURATIONS}/{configuration}")
    if status == 404:
        log.warning("ValidatingWebhookConfiguration %s not found: caBundle not set", configuration)
        return
    hooks = vwc.get("webhooks") or []
    before = (
        base64.b64decode((hooks[0].get("clientConfig") or {}).get("caBundle") or "")
        if hooks
        else b""
    )
    try:
        cas = webhookcerts.trusted_cas(ca, before.decode(errors="replace"), now_utc())
    except ValueError:
        cas = ca  # a caBundle that does not parse is replaced
    ca_bundle = base64.b64encode(cas.encode()).decode()
    ops = [
        {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle}
        for i, w in enumerate(hooks)
        if (w.get("clientConfig") or {}).get("caBundle") != ca_bundle
    ]
    if ops:
        version = vwc["metadata"]["resourceVersion"]
        test = {"op": "test", "path": "/metadata/resourceVersion", "value": version}
        await api.request(
            "PATCH",
            f"{WEBHOOK_CONFIGURATIONS}/{configuration}",
            body=[test, *ops],
            content_type="application/json-patch+json",
            kind="ValidatingWebhookConfiguration",
            verb="patch",
        )
        log.info("ValidatingWebhookConfiguration %s: caBundle set", configuration)


async def refresh_certificate(api: kube.KubeClient, opts: WebhookOptions) -> None:
    current, _ = await ensure_certificate(api, opts)
    if opts.configuration:
        await keep_ca_bundle(api, opts.configuration, current.ca)
    on_disk = opts.work_dir / "tls.crt"
    if not on_disk.exists() or on_disk.read_text() != current.cert:
        write_files(opts.work_dir, current)


async def _renewals(api: kube.KubeClient, opts: WebhookOptions) -> None:
    while True:
        await asyncio.sleep(CHECK_EVERY)
        try:
            await refresh_certificate(api, opts)
        except Exception as e:  # the next round tries again; the current certificate serves
            log.error("webhook certificate renewal failed: %s: %s", type(e).__name__, e)


@kopf.on.startup()
async def serve_webhooks(settings: kopf.OperatorSettings, memo: Memo, **_: Any) -> None:
    conf = memo.settings
    opts = conf.webhook
    if opts is None:
        log.info("no webhook options (--webhook-listen): the admission webhook is off")
        return

    async def login() -> kopf.ConnectionInfo | None:
        return login_fn(settings)

    runtime = conf.webhook_runtime = WebhookRuntime(kube.KubeClient(login, conf.metrics))
    if opts.cert_dir is not None:
        files = opts.cert_dir
    else:
        await refresh_certificate(runtime.api, opts)
        runtime.tasks.append(asyncio.create_task(_renewals(runtime.api, opts)))
        files = opts.work_dir
    settings.admission.server = kopf.WebhookServer(
        addr=opts.host,
        port=opts.port,
        certfile=str(files / "tls.crt"),
        pkeyfile=str(files / "tls.key"),
        cafile=str(files / "ca.crt"),
    )
    # The chart owns the configuration (failurePolicy, selectors); Kopf must not rewrite it.
    settings.admission.managed = None


@kopf.on.cleanup()
async def stop_webhooks(memo: Memo, **_: Any) -> None:
    runtime = memo.settings.webhook_runtime
    if runtime is None:
        return
    for task in runtime.tasks:
        task.cancel()
    await runtime.api.close()


# --- handlers ------------------------------------------------------------------------------
#
# The handlers read the objects they compare with from the API server, not from the operator's
# watch-fed indexes: with peering, the standby replica does not watch (its indexes are stale),
# yet the webhook Service sends it half of the admission requests.

POOLS_EVERYWHERE = "/apis/mailfleet.io/v1alpha1/sendingpools"


def _api(memo: Memo) -> kube.KubeClient:
    runtime = memo.settings.webhook_runtime
    assert runtime is not None, "serve_webhooks() makes the client at startup"
    return runtime.api


async def _items(api: kube.KubeClient, path: str) -> list[dict[str, Any]]:
    _, payload = await api.request("GET", path)
    items = payload.get("items") if isinstance(payload, dict) else None
    return list(items or [])


async def _pools(
    api: kube.KubeClient, namespace: str, everywhere: bool = False
) -> list[dict[str, Any]]:
    if everywhere:
        try:
            return await _items(api, POOLS_EVERYWHERE)
        except kube.ApiError as e:
            if e.status != 403:
                raise
            # A namespaced installation may not list other namespaces: its own then.
    return await _items(api, kube.SENDINGPOOLS.path(namespace))


async def _existing_secrets(
    api: kube.KubeClient, namespace: str, names: Iterable[str]
) -> list[str]:
    out = []
    for name in sorted(set(names)):
        if await api.get(kube.SECRETS, namespace, name) is not None:
            out.append(name)
    return out


def _verdict(v: admission.Verdict, warnings: list[str]) -> None:
    warnings.extend(v.warnings)
    if v.errors:
        raise kopf.AdmissionError("; ".join(v.errors), code=422)


def _namespace(body: Mapping[str, Any], namespace: str | None) -> str:
    return str(body.get("metadata", {}).get("namespace") or namespace or "")


def _secret_refs(body: Mapping[str, Any]) -> list[str]:
    spec = body.get("spec") or {}
    refs = [str(k.get("secretRef")) for k in spec.get("dkim") or [] if k.get("secretRef")]
    sub = spec.get("submission") or {}
    return refs + [str(sub[f]) for f in ("authSecretRef", "tlsSecretRef") if sub.get(f)]


@kopf.on.validate(GROUP, VERSION, "sendingpools", id="sendingpool", operations=["CREATE", "UPDATE"])
async def validate_pool(
    body: kopf.Body, namespace: str | None, warnings: list[str], memo: Memo, **kwargs: Any
) -> None:
    api = _api(memo)
    ns = _namespace(body, namespace)
    old = kwargs.get("old")
    pools = await _pools(api, ns, everywhere=True)
    policies = await _items(api, kube.DELIVERYPOLICIES.path(ns))
    refs = _secret_refs(body) + (_secret_refs(old) if old else [])
    secrets = await _existing_secrets(api, ns, refs)
    verdict = admission.check_pool(body, pools, policies, secrets)
    before = admission.check_pool(old, pools, policies, secrets) if old else None
    _verdict(admission.on_update(verdict, before), warnings)


@kopf.on.validate(GROUP, VERSION, "ipwarmups", id="ipwarmup", operations=["CREATE", "UPDATE"])
async def validate_warmup(
    body: kopf.Body, namespace: str | None, warnings: list[str], memo: Memo, **kwargs: Any
) -> None:
    api = _api(memo)
    ns = _namespace(body, namespace)

    async def pool(b: Mapping[str, Any]) -> Any:
        ref = str((b.get("spec") or {}).get("poolRef", ""))
        return await api.get(kube.SENDINGPOOLS, ns, ref) if ref else None

    old = kwargs.get("old")
    verdict = admission.check_warmup(body, await pool(body))
    before = admission.check_warmup(old, await pool(old)) if old else None
    _verdict(admission.on_update(verdict, before), warnings)


@kopf.on.validate(
    GROUP, VERSION, "deliverypolicies", id="deliverypolicy", operations=["CREATE", "UPDATE"]
)
async def validate_policy(
    body: kopf.Body, namespace: str | None, warnings: list[str], memo: Memo, **_: Any
) -> None:
    ns = _namespace(body, namespace)
    _verdict(admission.check_policy(body, await _pools(_api(memo), ns)), warnings)


@kopf.on.validate(
    GROUP, VERSION, "sendingdomains", id="sendingdomain", operations=["CREATE", "UPDATE"]
)
async def validate_domain(
    body: kopf.Body, namespace: str | None, warnings: list[str], memo: Memo, **_: Any
) -> None:
    ns = _namespace(body, namespace)
    names = [str(b.get("metadata", {}).get("name")) for b in await _pools(_api(memo), ns)]
    _verdict(admission.check_domain(body, names), warnings)
