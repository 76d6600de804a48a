"""From the site's own PACS to a validated model in production.

- `deid`: de-identification of pulled data sets (PS3.15 Basic Profile with options);
- `reportlabels`: per-hip labels from final report text (editable rules, en and de);
- `registry`: the model registry (versions, stages shadow/active, history, rollback);
- `agreement`: sensitivity, specificity and kappa with CIs, distribution shift;
- `monitor`: shadow validation, feedback and drift from the database.

Nothing here touches the network; `hiprouter.pull` drives the PACS side of `dataset pull`.
"""
