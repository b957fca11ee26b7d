"""The operator's loops and their memory: the coordinator (reconciler.Operator), the reconcile
of a pool's children, the pod poll, the health loop, the status writers, the SendingDomain
controller. They act through the clients and decide through the pure decisions."""
