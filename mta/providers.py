"""Which mailbox provider a recipient domain belongs to: by its MX hosts' suffixes (a company's
hosted domains share its MX) or by a list of its domains. Shipped defaults, overridable by name
from config; everything else is the provider "default"."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailfleet.mta.config import ProviderConfig, ProviderSettingsConfig, ShapingConfig

DEFAULT = "default"


@dataclass(frozen=True)
class ProviderMatch:
    name: str
    mx_suffixes: tuple[str, ...]
    domains: tuple[str, ...]


# Published MX names of the big providers. Hosted domains (Google Workspace, Microsoft 365) are
# recognised by their MX, which is why suffixes come first.
DEFAULT_MATCHES: tuple[ProviderMatch, ...] = (
    ProviderMatch(
        "gmail",
        ("google.com", "googlemail.com"),
        ("gmail.com", "googlemail.com"),
    ),
    ProviderMatch(
        "outlook",
        ("outlook.com", "protection.outlook.com", "hotmail.com"),
        ("outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk", "outlook.fr"),
    ),
    ProviderMatch(
        "yahoo",
        ("yahoodns.net", "yahoo.com", "aol.com"),
        ("yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk", "yahoo.fr"),
    ),
    ProviderMatch(
        "apple", ("icloud.com", "me.com", "mac.com"), ("icloud.com", "me.com", "mac.com")
    ),
    ProviderMatch("comcast", ("comcast.net",), ("comcast.net",)),
    ProviderMatch("gmx", ("gmx.net", "web.de", "1and1.com"), ("gmx.de", "gmx.net", "web.de")),
    ProviderMatch("mailru", ("mail.ru",), ("mail.ru", "inbox.ru", "bk.ru", "list.ru")),
    ProviderMatch("yandex", ("yandex.net", "yandex.ru"), ("yandex.ru", "yandex.com", "ya.ru")),
    ProviderMatch("zoho", ("zoho.com", "zoho.eu"), ("zoho.com", "zohomail.com")),
    ProviderMatch("proton", ("protonmail.ch", "proton.me"), ("proton.me", "protonmail.com")),
)


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _suffix_match(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


class ProviderTable:
    """Provider names and settings from config, with the shipped matches as defaults."""

    def __init__(self, cfg: ShapingConfig) -> None:
        configured = {p.name: p for p in cfg.providers}
        matches: list[ProviderMatch] = []
        for p in cfg.providers:
            if p.match.mx_suffixes or p.match.recipient_domains:
                matches.append(
                    ProviderMatch(
                        p.name,
                        tuple(_norm(s) for s in p.match.mx_suffixes),
                        tuple(_norm(d) for d in p.match.recipient_domains),
                    )
                )
        # A configured provider without a match of its own keeps the shipped one.
        for d in DEFAULT_MATCHES:
            if d.name not in {m.name for m in matches}:
                matches.append(d)
        self.matches: tuple[ProviderMatch, ...] = tuple(matches)
        self._settings: dict[str, ProviderSettingsConfig] = dict(configured)
        self._default = cfg.default
        self._by_domain = {d: m.name for m in reversed(self.matches) for d in m.domains}
        self._cache: dict[tuple[str, tuple[str, ...]], str] = {}

    def by_domain(self, domain: str) -> str | None:
        """The provider known from the recipient domain alone, if any (no DNS needed)."""
        return self._by_domain.get(_norm(domain))

    def lookup(self, domain: str, mx_hosts: Iterable[str] = ()) -> str:
        key = (domain, tuple(mx_hosts))
        found = self._cache.get(key)
        if found is None:
            found = self._lookup(domain, key[1])
            if len(self._cache) >= 100_000:  # bounded: domains are many, memory is not
                self._cache.clear()
            self._cache[key] = found
        return found

    def _lookup(self, domain: str, mx_hosts: Iterable[str]) -> str:
        known = self.by_domain(domain)
        if known is not None:
            return known
        hosts = [_norm(h) for h in mx_hosts]
        for m in self.matches:
            if any(_suffix_match(h, s) for h in hosts for s in m.mx_suffixes):
                return m.name
        return DEFAULT

    def settings(self, provider: str) -> ProviderSettingsConfig:
        """The policy for a provider: its own when configured, else the default."""
        return self._settings.get(provider, self._default)

    @property
    def names(self) -> Sequence[str]:
        return [m.name for m in self.matches] + [DEFAULT]


__all__ = ["DEFAULT", "DEFAULT_MATCHES", "ProviderConfig", "ProviderMatch", "ProviderTable"]
