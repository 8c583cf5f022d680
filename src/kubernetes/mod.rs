//! Kubernetes: pod and volume health through kube-rs watchers, the opt-in
//! eviction policy, and Lease election of the one replica that acts on
//! Kubernetes objects.
