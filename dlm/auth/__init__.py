"""Who is calling and what they may do.

Every request is admitted once, before its handler runs (``dlm.auth.gate``): its Host and Origin are
checked, its bearer token (a DLM API token or an identity provider's JWT) is verified, and the
route's declared role (``dlm.auth.policy.permission``) is compared with the caller's. The resulting
``Principal`` flows down to services as the actor recorded in the history.
"""

from dlm.auth.principal import ANONYMOUS, Principal

__all__ = ["ANONYMOUS", "Principal"]
