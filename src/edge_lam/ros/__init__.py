"""What every node and test shares about ROS itself: the QoS profiles (``qos``), declaring parameters
(``parameters``), and spinning until something happens (``spin``)."""
