package dev.livelearn.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

/** The build step that indexes dynamic config properties is not on Maven Central: none. */
@ApplicationScoped
public class NoDynamicProperties {
    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList properties() {
        return new DynamicConfigPropertyList(new java.util.ArrayList<>());
    }
}
