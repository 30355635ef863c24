"""Making a model: data, training, calibration, evaluation, export and quantization, and the SageMaker job
launchers (jobs/). Stands on classifier/; never imports serving/."""
