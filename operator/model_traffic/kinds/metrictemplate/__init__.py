"""MetricTemplate and ClusterMetricTemplate: a check defined once, referenced from TrafficConfigs' analysis."""
