"""The ptool-ops policy pack: ``pulumi preview --policy-pack components/policy``."""
