"""AWS clients, made one way: from botocore's session.

boto3's session and resource layer add about 0.1 s of start-up CPU to every command that
talks to AWS and give us nothing we use (client calls and paginators are botocore's). The
credential chain (environment, profile, instance role) is botocore's either way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.config import Config


def client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    config: Config | None = None,
) -> Any:
    """A botocore client of ``service``; the region defaults to AWS_REGION, then us-east-1.
    Callers cast it to their typed client (``mypy_boto3_*``)."""
    import botocore.session

    return botocore.session.get_session().create_client(
        service,
        region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
        endpoint_url=endpoint_url,
        config=config,
    )
