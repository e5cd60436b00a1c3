"""Host side: elastic policies, the guard around them and the runner in the agent."""
