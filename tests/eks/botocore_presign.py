"""EKS tokens made by botocore, as `aws eks get-token` makes them, for tests/eks_token.rs.

Reads a JSON list of cases on stdin ({access_key_id, secret_access_key, session_token,
region, cluster, time: "YYYYMMDDTHHMMSSZ"}) and prints a JSON list of {url, token}. The
presigned URL comes from the STS client's generate_presigned_url('get_caller_identity')
with the cluster name injected as the x-k8s-aws-id header before signing, exactly like
awscli/customizations/eks/get_token.py; the clock is frozen at `time`. Nothing is sent
anywhere: presigning is local.
"""
import base64
import datetime
import json
import sys
from unittest import mock

import botocore.auth
import botocore.session


def frozen_datetime(fixed):
    class Frozen(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return fixed

        @classmethod
        def now(cls, tz=None):
            aware = fixed.replace(tzinfo=datetime.timezone.utc)
            return aware.astimezone(tz) if tz else fixed

    return Frozen


def token_for(case):
    session = botocore.session.Session()
    session.set_config_variable("sts_regional_endpoints", "regional")
    session.set_credentials(case["access_key_id"], case["secret_access_key"], case.get("session_token"))
    client = session.create_client("sts", region_name=case["region"])

    def retrieve_cluster_name(params, context, **kwargs):
        if "ClusterName" in params:
            context["eks_cluster"] = params.pop("ClusterName")

    def inject_cluster_name_header(request, **kwargs):
        if "eks_cluster" in request.context:
            request.headers["x-k8s-aws-id"] = request.context["eks_cluster"]

    client.meta.events.register("provide-client-params.sts.GetCallerIdentity", retrieve_cluster_name)
    client.meta.events.register("before-sign.sts.GetCallerIdentity", inject_cluster_name_header)

    fixed = datetime.datetime.strptime(case["time"], "%Y%m%dT%H%M%SZ")
    patches = [mock.patch.object(botocore.auth.datetime, "datetime", frozen_datetime(fixed))]
    if hasattr(botocore.auth, "get_current_datetime"):  # newer botocore
        patches.append(mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: fixed))
    for p in patches:
        p.start()
    try:
        url = client.generate_presigned_url(
            "get_caller_identity", Params={"ClusterName": case["cluster"]}, ExpiresIn=60, HttpMethod="GET"
        )
    finally:
        for p in patches:
            p.stop()
    token = "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode("utf-8")).decode("utf-8").rstrip("=")
    return {"url": url, "token": token}


if __name__ == "__main__":
    print(json.dumps([token_for(case) for case in json.load(sys.stdin)]))
