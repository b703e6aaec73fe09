"""Kubernetes objects rendered from the config (a stage: it imports only `multitower`).

One module per idea: `objects` (names, labels, the project's pod template), `security` (the
restricted Pod Security Standard and the scratch folder), `storage` (which paths a pod can
reach), `preprocess`, `training` (Indexed Job and headless Service, or TFJob), `daily`
(CronJob, ServiceAccount, Role, RoleBinding), `permissions` (the calls `submit daily` makes),
`serving` (TF Serving Deployment, Service, autoscaler, disruption budget), `render` (the
objects of each step, as YAML files with a kustomization), and for `multitower submit`:
`client` (the API client, its timeouts and safe retries), `watch` (pods of a Job, 410 Gone
resumed, failure reasons and logs) and `submit` (create, apply, wait, the daily run).
"""
