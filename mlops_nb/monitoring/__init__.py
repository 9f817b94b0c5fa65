"""The monitoring loop: what the service logged and the feedback, turned into windows, drift, alerts and
retraining. It never imports the service (nor the service it): ``data.logs`` holds the formats they share."""
