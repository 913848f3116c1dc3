print("I never open Dagster Pipes")
