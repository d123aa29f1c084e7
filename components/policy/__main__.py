"""Entry point of the policy pack (run by the Pulumi CLI, never imported by tests:
constructing a PolicyPack starts its gRPC server and blocks)."""

from pulumi_policy import PolicyPack

from components.policy.policies import ALL_POLICIES

PolicyPack(name="ptool-ops", policies=ALL_POLICIES)
