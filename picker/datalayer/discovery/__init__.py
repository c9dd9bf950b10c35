"""Endpoints from the Kubernetes API: an InferencePool's Ready pods, or a label selector's.

``build.from_config`` makes a ``controller.Discovery`` from the ``discovery`` settings;
``reflector`` is the list+watch loop, ``client`` the HTTP side, ``objects`` what is kept
of pods and pools, ``selector`` label selectors, ``kubeconfig`` where the API server is.
User documentation: ``docs/kubernetes-discovery.md``.
"""
