"""HTTP clients for the platforms the service runs on (Neon, Railway), shared by the
operations code and the Pulumi dynamic providers in ``components/providers``.

Import the submodules directly (``from ptool_ops.platform.neon import NeonClient``): this
package imports nothing, so ``ptool-ops --help`` never pays for httpx.
"""
