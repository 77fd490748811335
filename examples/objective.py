#!/usr/bin/env python
"""A trivial objective for the demo hunt: a noisy 2-D quadratic."""
import argparse
import random
import time

from orion.client import report_objective

parser = argparse.ArgumentParser()
parser.add_argument("-x", type=float, required=True)
parser.add_argument("-y", type=float, required=True)
args = parser.parse_args()
time.sleep(random.uniform(0.05, 0.2))  # pretend to train
report_objective((args.x - 2) ** 2 + (args.y + 1) ** 2)
