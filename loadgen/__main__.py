import sys

sys.exit("loadgen: the city-day load generator is not built yet; try `clearing demo`")
