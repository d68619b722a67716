//! Talking to the Kubernetes API (kube-rs): building a client from a kubeconfig or the
//! in-cluster service account.

pub mod client;
