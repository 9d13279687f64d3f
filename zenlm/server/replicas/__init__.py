"""`zen serve --replicas N`: zenlm's OpenAI app on N engine replicas behind one endpoint, on Ray Serve.

bridge.py (what crosses from the ingress to a replica, and running zenlm's ASGI app on it) and
prefixes.py (the prefix-affinity table) are plain Python; router.py, deployments.py and launch.py
import Ray. Nothing here is imported unless --replicas is given, so single-process serving never loads Ray.
"""
