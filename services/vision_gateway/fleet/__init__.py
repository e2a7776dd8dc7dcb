"""Several Ollama backends behind one gateway: model-aware routing, failover, affinity.

backend.py (one backend's state), registry.py (refreshing it, up/down), routing.py (the pure
choice), affinity.py (conversation -> backend), metrics.py (per-backend series), fleet.py (the
facade the chat service and the capability service use). Import the modules themselves: this
package imports nothing, so metrics.py can use fleet/metrics.py without a cycle.
"""
