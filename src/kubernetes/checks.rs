//! Pure checks over a [`KubernetesSnapshot`]. Phase 2 maps them to the
//! evaluation core's check results; time is an argument.
