"""AI pipelines that jobs run; each module registers its kind with the pipeline registry."""
