"""What a refused server certificate means, by OpenSSL's verify code, and what to
change: for the collector's clients (the shipper, the CLI's API client). Each said "not
trusted: give it the CA" for any refusal, and an operator whose certificate had expired
or did not name the host in the url changed the CA setting, to no effect."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Final

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h): the ssl module names none of them.
#: The issuer is not among the trusted CAs: unable to get issuer certificate (2, 20),
#: self-signed (18), a self-signed CA in the chain (19), the leaf's issuer missing (21).
_UNTRUSTED: Final = frozenset({2, 18, 19, 20, 21})
#: Signed by another key than the trusted CA's of its issuer's name: a certificate
#: without an authority key identifier is matched to a CA by name alone, so a CA made
#: again under the same name (an older copy given as the CA) ends here, not in "untrusted".
_SIGNATURE_FAILURE: Final = 7
_NOT_YET_VALID: Final = 9
_EXPIRED: Final = 10
_WRONG_PURPOSE: Final = 26  # not for a TLS server (extended key usage, key usage)
_NAME_MISMATCH: Final = frozenset({62, 64})  # the host name; the IP address


@dataclass(frozen=True)
class Remedies:
    """How one client says whose certificate it is and where its settings are."""

    server: str  # "the collector's": whose certificate
    trust: str  # how this client is given a CA to trust
    address: str  # where this client names the server


def refused_certificate(exc: ssl.SSLCertVerificationError, remedies: Remedies) -> str:
    """The cause of ``exc`` (a refused certificate) and the remedy, in a few words."""
    code, cert = exc.verify_code, f"{remedies.server} certificate"
    if code in _UNTRUSTED:
        return f"{cert} is not trusted here: {remedies.trust}"
    if code == _SIGNATURE_FAILURE:
        return (f"{cert} names a CA trusted here as its issuer, but that CA did not sign "
                f"it: if its CA was made again under the same name, {remedies.trust} (the "
                f"new one); if not, something else answers in its place")
    if code == _EXPIRED:
        # The trusted CA does not matter: renewing does (or a clock set far ahead).
        return (f"{cert} has expired: renew it (a SIGHUP makes the collector load the "
                f"new one), or set this host's clock right if it is ahead")
    if code == _NOT_YET_VALID:
        return (f"{cert} is not valid yet: set this host's clock right if it is behind, "
                f"or reissue the certificate with a start date already past")
    if code in _NAME_MISMATCH:
        return (f"{cert} does not hold the name or address used to reach it: "
                f"{remedies.address}, or reissue it with that one in its subjectAltName")
    if code == _WRONG_PURPOSE:
        return (f"{cert} is not one for a TLS server (its extended key usage lacks "
                f"serverAuth, or its key usage forbids it): reissue it")
    return (f"{cert} is refused for the reason above, which a CA setting does not "
            f"change: look at it with `openssl x509 -noout -text -in <certificate>`")
