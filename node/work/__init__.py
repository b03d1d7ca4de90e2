"""The work: worker processes that run a job through the pipeline, write its results
and queue them, and delivery of the results to their destinations."""
